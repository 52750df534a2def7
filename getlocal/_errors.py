class GetLocalError(Exception):
    """Raised for misuse of getlocal; the message names the object and the fix."""
