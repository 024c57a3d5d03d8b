"""Tracking through training: schedules, gradient statistics, one record, the Tracker."""

from hessnb.tracking.record import record_step
from hessnb.tracking.schedule import Schedule, make_schedule
from hessnb.tracking.tracker import Tracker

__all__ = ["Schedule", "Tracker", "make_schedule", "record_step"]
