-- 009 CDR review count: how many conflicting records wait in cdr.conflicts for review.
--
-- The CDR worker (role cdr_writer) publishes it with its other stats for monitoring
-- (hapbx_cdr_review); it may count them, never read them (no SELECT on cdr.conflicts).

CREATE FUNCTION cdr.review_count() RETURNS bigint
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog
AS $$ SELECT count(*) FROM cdr.conflicts $$;

REVOKE ALL ON FUNCTION cdr.review_count() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cdr.review_count() TO cdr_writer;
