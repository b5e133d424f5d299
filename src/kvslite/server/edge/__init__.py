"""HTTP edge: ASGI app, routing and validation from botocore models, SigV4, AWS errors."""
