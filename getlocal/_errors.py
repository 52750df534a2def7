class GetLocalError(Exception):
    """Raised for misuse of getlocal; the message names the object and the fix."""


class ArgumentError(GetLocalError, ValueError):
    """An argument of the right type whose value cannot be used."""


class ArgumentTypeError(GetLocalError, TypeError):
    """An argument of the wrong type."""
