"""Device side: sessions over bundles, and the backends that run them."""
