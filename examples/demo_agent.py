"""An agent script for `vncsess up --script`: it runs offline, against the demo page.

    vncsess up --script examples/demo_agent.py --script-arg=--label --script-arg=try-1 --wait

It drives a browser-use Agent with the session's model (the offline demo model unless a key
is configured) on the session's display, then reads the page itself through the same browser,
and prints its result as the last JSON line: `vncsess wait` and `vncsess result` show it.
"""

import argparse
import asyncio
import sys

from vncsess_agent import script


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--label", default="demo")
    parser.add_argument("--max-steps", type=int, default=10)
    opts = parser.parse_args(script.args())

    agent = script.agent("demo")  # the demo task: open the demo page, reveal its secret
    history = await agent.run(max_steps=opts.max_steps)
    url = await agent.browser_session.get_current_page_url()  # what the browser shows now
    print(f"[{opts.label}] the agent finished on {url}", file=sys.stderr)
    script.result(
        final_text=history.final_result(),
        success=bool(history.is_successful()),
        urls=[url],
        steps=len(history.history),
        label=opts.label,
    )
    return 0 if history.is_successful() else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
