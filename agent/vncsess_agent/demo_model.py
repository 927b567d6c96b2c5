"""The demo model (`VNCSESS_LLM=demo`): a scripted browser-use chat model, in process, no network.

It plays the part of an LLM for the demo task and really drives the page from the state
browser-use sends it, like a real model would:

1. if the demo page is not the current tab, navigate to it (browser-use normally opens the URL
   in the task itself before the first model call, so this step is usually skipped);
2. find the element index of the reveal button in the DOM listing (e.g. `[2]<button id=reveal />`)
   and click it;
3. read the revealed sentence from the next state and finish with `done`, quoting it.

On the upload page (`upload.html`: a task that names it) it uploads the first file of its
`available_file_paths` (the session's uploads) into the page's `<input type=file>`, clicks
the receipt the page then offers, and finishes once the download is among its files, quoting
what the page says it received.

Anything else (no button, no secret after clicking) ends with `done(success=False)` and a
reason. Each answer waits VNCSESS_DEMO_STEP_DELAY seconds (default 1) so people can follow the
run in noVNC.
"""

from __future__ import annotations

import asyncio
import logging
import re
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from browser_use.llm.exceptions import ModelProviderError
from browser_use.llm.messages import BaseMessage, UserMessage
from browser_use.llm.views import ChatInvokeCompletion, ChatInvokeUsage
from pydantic import BaseModel

T = TypeVar("T", bound=BaseModel)

MAX_CLICKS = 3

LOG = logging.getLogger("vncsess.demo")

BUTTON_RE = re.compile(r"\[(\d+)\]<button\b[^>\n]*\bid=reveal\b")
SECRET_RE = re.compile(r"The demo secret is: ([A-Za-z0-9-]+)")
URL_RE = re.compile(r"https?://[^\s<>\"']+")
TAB_RE = re.compile(r"^Tab (\w+): (\S+)", re.MULTILINE)
CURRENT_TAB_RE = re.compile(r"^Current tab: (\w+)", re.MULTILINE)
FILE_INPUT_RE = re.compile(r"\[(\d+)\]<input\b[^>\n]*\btype=file\b")
RECEIPT_RE = re.compile(r"\[(\d+)\]<a\b[^>\n]*\bid=receipt\b")
RECEIVED_RE = re.compile(r"The page received [^\n]*?\(\d+ bytes\) beginning \"[^\n]*?\"\.")
FILES_RE = re.compile(r"<available_file_paths>(.*?)</available_file_paths>", re.DOTALL)
MAX_WAITS = 5


def _text_of(message: BaseMessage) -> str:
    content = getattr(message, "content", "")
    if isinstance(content, str):
        return content
    parts = []
    for part in content or []:
        text = getattr(part, "text", None)
        if isinstance(text, str):
            parts.append(text)
    return "\n".join(parts)


def _section(text: str, tag: str) -> str:
    match = re.search(rf"<{tag}>\n?(.*?)\n?</{tag}>", text, re.DOTALL)
    return match.group(1) if match else ""


def _action_names(output_format: Any) -> set[str]:
    """The actions the output schema allows (only `done` on a forced last step)."""
    try:
        item = typing.get_args(output_format.model_fields["action"].annotation)[0]
        return set(item.model_fields)
    except (KeyError, IndexError, AttributeError):
        return set()


def _current_url(browser_state: str) -> str | None:
    tabs = TAB_RE.findall(browser_state)
    current = CURRENT_TAB_RE.search(browser_state)
    if current:
        for tab_id, url in tabs:
            if tab_id == current.group(1):
                return str(url)
    return str(tabs[0][1]) if len(tabs) == 1 else None


@dataclass
class DemoChatModel:
    """Implements browser-use's BaseChatModel protocol (model, provider, name, ainvoke)."""

    model: str = "vncsess-demo"
    step_delay: float = 1.0
    calls: int = field(default=0, init=False)
    # Clicks decided so far. A decision can be thrown away (browser-use drops the answer when
    # the agent is paused mid-call), so this is a bound, not a fact: give up after MAX_CLICKS.
    clicks: int = field(default=0, init=False)
    uploads: int = field(default=0, init=False)  # upload_file actions decided (a bound too)
    waits: int = field(default=0, init=False)  # steps waited for the receipt's download
    _verified_api_keys: bool = True

    @property
    def provider(self) -> str:
        return "vncsess"

    @property
    def name(self) -> str:
        return self.model

    @property
    def model_name(self) -> str:
        return self.model

    async def ainvoke(
        self, messages: list[BaseMessage], output_format: type[T] | None = None, **kwargs: Any
    ) -> ChatInvokeCompletion:
        self.calls += 1
        if self.step_delay:
            await asyncio.sleep(self.step_delay)
        usage = ChatInvokeUsage(
            prompt_tokens=0,
            prompt_cached_tokens=None,
            prompt_cache_creation_tokens=None,
            prompt_image_tokens=None,
            completion_tokens=0,
            total_tokens=0,
        )
        if output_format is None:
            # Free-text calls (page extraction, summaries): the demo has nothing to add.
            return ChatInvokeCompletion(
                completion="(the demo model has no free-text answer)", usage=usage
            )
        if "action" not in getattr(output_format, "model_fields", {}):
            raise ModelProviderError(
                f"the demo model only answers agent steps, not {output_format.__name__}",
                status_code=400,
                model=self.model,
            )
        decision = self.decide(messages)
        allowed = _action_names(output_format)
        chosen = next(iter(decision["action"][0]))
        if allowed and chosen not in allowed and "done" in allowed:
            # browser-use's last step (max steps or max failures) allows only `done`.
            reason = "Ran out of steps before the secret was revealed."
            decision = self._output(
                reason, reason, "Stop.", {"done": {"text": reason, "success": False}}
            )
        LOG.info("demo model: %s", decision["next_goal"])
        return ChatInvokeCompletion(completion=output_format.model_validate(decision), usage=usage)

    def decide(self, messages: list[BaseMessage]) -> dict[str, Any]:
        """The next AgentOutput (as a dict) for the latest browser state."""
        # The latest state message (browser-use may add a plain context message after it).
        user_texts = [_text_of(m) for m in messages if isinstance(m, UserMessage)]
        latest = next((t for t in reversed(user_texts) if "<browser_state>" in t), "")
        browser_state = _section(latest, "browser_state")
        task = _section(latest, "user_request")
        demo_url = next(iter(URL_RE.findall(task)), None)
        current_url = _current_url(browser_state)

        upload = self._upload_step(latest, browser_state)
        if upload is not None:
            return upload

        secret = SECRET_RE.search(browser_state)
        if secret:
            sentence = secret.group(0)
            return self._output(
                evaluation="The button revealed the secret.",
                memory=f"Clicked the reveal button; the page now shows: {sentence}",
                goal="Report the secret and finish.",
                action={"done": {"text": sentence, "success": True}},
            )

        button = BUTTON_RE.search(browser_state)
        if button and self.clicks < MAX_CLICKS:
            self.clicks += 1
            index = int(button.group(1))
            return self._output(
                evaluation="The demo page is open and shows the reveal button.",
                memory=f"The reveal button has element index {index}.",
                goal=f"Click the reveal button [{index}].",
                action={"click": {"index": index}},
            )

        if demo_url and (current_url is None or not current_url.startswith(demo_url)):
            return self._output(
                evaluation="The demo page is not open yet.",
                memory="Need to open the demo page first.",
                goal=f"Open {demo_url}.",
                action={"navigate": {"url": demo_url, "new_tab": False}},
            )

        reason = (
            f"Clicked the reveal button {self.clicks} times, but no secret appeared on the page."
            if self.clicks
            else "Could not find the reveal button on the page."
        )
        return self._output(
            evaluation=reason,
            memory=reason,
            goal="Give up and report the problem.",
            action={"done": {"text": reason, "success": False}},
        )

    def _upload_step(self, latest: str, browser_state: str) -> dict[str, Any] | None:
        """The upload page's steps, or None when this is not the upload page."""
        files = FILES_RE.search(latest)
        paths = [
            line.strip()
            for line in (files.group(1) if files else "").splitlines()
            if line.strip().startswith("/")
        ]
        uploads = [p for p in paths if "/uploads/" in p]
        downloads = [p for p in paths if "/downloads/" in p]
        received = RECEIVED_RE.search(browser_state)
        if received:
            sentence = received.group(0)
            receipt = RECEIPT_RE.search(browser_state)
            if downloads or self.waits >= MAX_WAITS or receipt is None:
                saved = f" Its receipt was downloaded as {downloads[-1].rsplit('/', 1)[-1]}."
                return self._output(
                    evaluation="The page received the file.",
                    memory=sentence,
                    goal="Report what the page received and finish.",
                    action={
                        "done": {
                            "text": sentence + (saved if downloads else " No receipt came."),
                            "success": bool(downloads),
                        }
                    },
                )
            if self.waits == 0:
                self.waits += 1
                index = int(receipt.group(1))
                return self._output(
                    evaluation="The page received the file and offers a receipt.",
                    memory=sentence,
                    goal=f"Download the receipt [{index}].",
                    action={"click": {"index": index}},
                )
            self.waits += 1
            return self._output(
                evaluation="The receipt is not among my files yet.",
                memory=sentence,
                goal="Wait for the receipt's download.",
                action={"wait": {"seconds": 1}},
            )
        file_input = FILE_INPUT_RE.search(browser_state)
        if file_input and uploads and self.uploads < MAX_CLICKS:
            self.uploads += 1
            index = int(file_input.group(1))
            return self._output(
                evaluation="The page has a file field, and I have a file to give it.",
                memory=f"Files available: {', '.join(uploads)}",
                goal=f"Upload {uploads[0]} into the file field [{index}].",
                action={"upload_file": {"index": index, "path": uploads[0]}},
            )
        if file_input and not uploads:
            reason = "The page asks for a file, but the session has no uploads."
            return self._output(
                evaluation=reason,
                memory=reason,
                goal="Give up and report the problem.",
                action={"done": {"text": reason, "success": False}},
            )
        return None

    @staticmethod
    def _output(evaluation: str, memory: str, goal: str, action: dict[str, Any]) -> dict[str, Any]:
        return {
            "thinking": None,
            "evaluation_previous_goal": evaluation,
            "memory": memory,
            "next_goal": goal,
            "action": [action],
        }
