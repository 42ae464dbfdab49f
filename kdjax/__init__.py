"""kdjax: functional knowledge distillation for JAX and Flax."""

from kdjax import losses

__version__ = '0.1.0'
