"""hs_jax: Heterogeneous Swarms (Feng et al., 2025) in JAX/Flax."""
