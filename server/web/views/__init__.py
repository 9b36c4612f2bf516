"""The dashboard's pages, one module per concept; each gives its `routes()`."""
