"""vncsess: disposable, watchable desktops for AI browser agents."""

__version__ = "0.1.0"
