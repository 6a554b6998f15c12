"""The one user-facing error type: every message meant for the person at the keyboard.

    from core.errors import LabError
    raise LabError("row 3: 'answer' is empty.")

Bad input, a missing file, a refused action, a model that does not fit: each module raises a
LabError (or a subclass that names its area), with a one-line message that says what to do.
The tabs show it as a one-line warning (tabs.feedback.warn), the CLI as `error: ...`. Anything
else is a bug, and surfaces as one: it is never dressed up as an input mistake.
"""


class LabError(Exception):
    """A problem the user can fix or must know about; the message is shown as is."""
