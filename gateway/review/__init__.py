"""`defed quarantine serve`: a read-only web page (and JSON API) over the audit log.

Modules: `listen` (the address and when it needs a password; no web dependency), `guards` (HTTP
Basic auth, the DNS-rebinding guard, security headers), `images` (frames, thumbnails and heatmaps as PNG),
`views` (denoised views from the event's own bundle, cached), `app` (routes and templates).
Everything but `listen` needs the `web` extra.
"""
