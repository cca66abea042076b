"""Caffe layer implementations, one file per Caffe type, in one registry."""
from ._registry import check_arity, get, known_types, register
from .base import CaffeLayer

__all__ = ["CaffeLayer", "register", "get", "known_types", "check_arity"]
