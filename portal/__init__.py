"""The aivc portal: the lake's datasets, submissions, SQL and embeddings over HTTP and in a browser.

``aivc serve --lake L`` runs :func:`aivc.portal.app.create_app` on uvicorn. Every route applies
the lake's access rules (``aivc access``) for the principal of the request (:mod:`.auth`).
"""
