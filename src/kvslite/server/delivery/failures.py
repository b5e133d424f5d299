"""Why a delivery attempt failed, and whether another attempt could succeed."""


class DeliveryError(Exception):
    """A delivery attempt failed. A `permanent` failure is not retried: the event is
    dropped, logged with `reason` and counted."""

    def __init__(self, reason: str, *, permanent: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
