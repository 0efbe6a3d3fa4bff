"""A Matrix application service that gives a CRM team chat."""

__version__ = "0.1.0"
