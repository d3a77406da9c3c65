"""The enclave agent (``blindbox serve``): attested TLS in front of an unmodified HTTP application.

Modules, one thing each: ``tls`` (the in-memory TLS identity), ``backends``
(where reports come from), ``evidence`` (protocol v1 documents, queued),
``framing`` (request-head checks h11 does not make), ``auth`` (the owner
policy's authentication), ``headers`` (what crosses the proxy),
``client_certificate`` (post-handshake client certificates without WebPKI
trust), ``upstream`` (kept-alive upstream connections), ``connection`` (one
client connection), ``agent`` (the listener and its threads). Nothing here
imports :mod:`blindbox.testing`.
"""
