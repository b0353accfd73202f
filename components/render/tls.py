"""A host's TLS files: the cluster CA (every host) and a service's certificate and key, both from
the cluster CA (components/certificates.py ClusterCa; services: render.TLS_SERVICES)."""
from __future__ import annotations

from hapbx_node.layout import TLS_CA, tls_certificate, tls_key

from . import RenderContext, RenderedFile, node_secret, tls_stems

CERT_CHECK = "openssl x509 -noout -in {path}"
KEY_CHECK = "openssl pkey -noout -in {path}"


def ca_file(ctx: RenderContext) -> RenderedFile:
    """The CA every link between the hosts verifies its peer against. It changes only with the CA
    itself, which reissues every service certificate too: their files' handlers reload the services."""
    return RenderedFile(TLS_CA, ctx.secret("tls_ca_certificate"), mode="0644", validate=CERT_CHECK,
                        secrets=("tls_ca_certificate",))


def service_files(ctx: RenderContext, service: str, *, unit: str | None, action: str, owner: str = "root",
                  group: str = "root", key_mode: str = "0600") -> list[RenderedFile]:
    """This host's certificate (world-readable) and key (``owner:group``, ``key_mode``) of ``service``,
    each reloading ``unit`` through ``action`` when it changes (tls.rotate, renewal)."""
    cert_name, key_name = (node_secret(ctx.cluster, stem, ctx.host.name) for stem in tls_stems(service))
    return [
        RenderedFile(tls_certificate(service), ctx.secret(cert_name), service=unit, action=action, owner=owner,
                     group=group, mode="0644", validate=CERT_CHECK, secrets=(cert_name,)),
        RenderedFile(tls_key(service), ctx.secret(key_name), service=unit, action=action, owner=owner,
                     group=group, mode=key_mode, validate=KEY_CHECK, secrets=(key_name,)),
    ]
