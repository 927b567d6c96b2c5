"""The vncsess agent runner: runs one browser-use Agent on the session's display.

Started as the agent container's CMD (``python -m vncsess_agent``). The contract (environment,
secret files, signals, /data/result.json and /data/status.json) is described in runner.py.
"""

__version__ = "0.1.0"
