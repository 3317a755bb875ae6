"""vision_jax: image classification with CNNs and ResNets in JAX/Flax."""
