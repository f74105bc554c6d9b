"""Ignite handlers: the LiLAW meta step, and (in their own modules) the dynamics recorder and logging."""

from lilaw_med.handlers.meta_step import LiLAWHandler

__all__ = ["LiLAWHandler"]
