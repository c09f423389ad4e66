"""App tabs that live in their own module (layout and handlers together, a ``build`` function
each); ``app.ui`` calls them."""
