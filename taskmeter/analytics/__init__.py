"""The seed's execution reports: queries over the store, pure computations, renderers."""
