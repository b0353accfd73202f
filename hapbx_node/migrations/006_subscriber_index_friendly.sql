-- 006 subscriber view without length casts on its lookup columns.
--
-- Kamailio's auth_db asks `WHERE username = $1 AND domain = $2`. In 003 the view cast
-- pbx.extensions.number to varchar(64): a length coercion is a function call, so the
-- planner could not use extensions_number_key and every REGISTER scanned all extensions
-- (0.24 ms at 2,000 users, seen in `hapbx bench sip`). A plain ::varchar is a relabel of
-- text and keeps the index usable; Kamailio does not read the declared lengths.
DROP VIEW kamailio.subscriber;
CREATE VIEW kamailio.subscriber AS
    SELECT c.extension_id::integer AS id,
           e.number::varchar       AS username,
           c.domain::varchar       AS domain,
           ''::varchar             AS password,
           c.ha1::varchar          AS ha1,
           c.ha1b::varchar         AS ha1b
      FROM pbx.sip_credentials c
      JOIN pbx.extensions e ON e.id = c.extension_id
     WHERE e.enabled;
GRANT SELECT ON kamailio.subscriber TO kamailio;
