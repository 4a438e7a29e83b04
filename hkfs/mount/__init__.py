"""What mount paths mean: views, resolution and the `.query` layer, over the core. No FUSE."""
