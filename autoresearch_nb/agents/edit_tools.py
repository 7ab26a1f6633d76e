"""The tools an LLM agent edits with: a text editor on a scratch copy of the allowed files, and submit."""
from __future__ import annotations

import posixpath

EDITOR_TOOL_NAME = "str_replace_based_edit_tool"
EDITOR_TOOL_TYPE = "text_editor_20250728"
SUBMIT_TOOL_NAME = "submit_experiment"
MAX_DESCRIPTION_CHARS = 160

SUBMIT_DESCRIPTION = (
    "Submit the edited files as the next experiment. Call it once, after your edits. The harness "
    "then trains with the new code for the fixed budget and keeps the change only if the metric "
    "improves."
)
SUBMIT_SCHEMA = {
    "type": "object",
    "properties": {
        "description": {
            "type": "string",
            "description": "One short line saying what changed, e.g. 'raise lr to 0.04'. "
            "It goes into results.tsv.",
        },
        "rationale": {
            "type": "string",
            "description": "The hypothesis behind the change and what result would confirm it.",
        },
    },
    "required": ["description", "rationale"],
}

# Function-calling form of the text editor, for endpoints that lack Anthropic's built-in tool.
EDITOR_FUNCTION_DESCRIPTION = (
    "View and edit the files you may change. Commands: view (path, optional view_range "
    "[start, end] with 1-based lines, end -1 for the end of file; path '.' lists the files), "
    "str_replace (path, old_str that occurs exactly once, new_str), create (path, file_text: "
    "the whole new file), insert (path, insert_line: the line to insert after, 0 for the top, "
    "insert_text)."
)
EDITOR_SCHEMA = {
    "type": "object",
    "properties": {
        "command": {"type": "string", "enum": ["view", "str_replace", "create", "insert"]},
        "path": {"type": "string"},
        "view_range": {"type": "array", "items": {"type": "integer"}},
        "old_str": {"type": "string"},
        "new_str": {"type": "string"},
        "file_text": {"type": "string"},
        "insert_line": {"type": "integer"},
        "insert_text": {"type": "string"},
    },
    "required": ["command", "path"],
}


class ToolError(Exception):
    """A tool call that changed nothing; its message goes back to the model as an error result."""


class ScratchCopy:
    """In-memory copies of the allowed files that the editor changes; the lab is never touched."""

    def __init__(self, files: dict[str, str], allowed: list[str], locked: list[str] = (),
                 lab_dir: str = ""):
        self.allowed = list(allowed)
        self.locked = list(locked)
        self.lab_dir = lab_dir.rstrip("/")
        self.original = {path: files[path] for path in self.allowed if path in files}
        self.current = dict(self.original)

    def changed_files(self) -> dict[str, str]:
        """Final contents of the files whose text differs from where they started."""
        return {path: text for path, text in self.current.items()
                if self.original.get(path) != text}

    def resolve(self, path) -> str:
        """The allowed relative path `path` names, or ToolError saying what may be edited."""
        if not isinstance(path, str) or not path.strip():
            raise ToolError("Missing 'path': give one of " + ", ".join(self.allowed))
        raw = path.strip()
        if self.lab_dir and raw.startswith(self.lab_dir + "/"):
            raw = raw[len(self.lab_dir) + 1:]
        relative = posixpath.normpath(raw.lstrip("/"))
        if relative in self.allowed:
            return relative
        # Models often write /repo/nanochat/train.py or just train.py: accept one clear match.
        matches = [p for p in self.allowed
                   if relative.endswith("/" + p) or posixpath.basename(p) == relative]
        if len(matches) == 1 and not self._is_locked(relative):
            return matches[0]
        if self._is_locked(relative):
            raise ToolError(f"{path} is locked and cannot be viewed or changed here. "
                            f"Only these files may be edited: {', '.join(self.allowed)}")
        raise ToolError(f"{path} is not an editable file. "
                        f"Only these files may be edited: {', '.join(self.allowed)}")

    def _is_locked(self, relative: str) -> bool:
        return any(relative == p or relative.endswith("/" + p) or posixpath.basename(p) == relative
                   for p in self.locked)

    def run(self, tool_input) -> str:
        """Carry out one editor command; the text result, or ToolError."""
        if not isinstance(tool_input, dict):
            raise ToolError("The tool input must be an object with 'command' and 'path'.")
        command = tool_input.get("command")
        path = tool_input.get("path")
        if command == "view" and isinstance(path, str) and path.strip() in ("", ".", "/", "./"):
            return "Files you may edit:\n" + "\n".join(self.allowed)
        if command not in ("view", "str_replace", "create", "insert"):
            raise ToolError(f"Unknown command {command!r}: use view, str_replace, create or insert.")
        relative = self.resolve(path)
        if command == "create":
            text = _string_param(tool_input, "file_text")
            self.current[relative] = text
            return f"Wrote {relative} ({len(text.splitlines())} lines)."
        if relative not in self.current:
            raise ToolError(f"{relative} does not exist yet: use create to write it.")
        if command == "view":
            return self._view(relative, tool_input.get("view_range"))
        if command == "str_replace":
            return self._str_replace(relative, tool_input)
        return self._insert(relative, tool_input)

    def _view(self, relative: str, view_range) -> str:
        lines = self.current[relative].splitlines()
        start, end = 1, len(lines)
        if view_range is not None:
            if (not isinstance(view_range, list) or len(view_range) != 2
                    or not all(isinstance(n, int) for n in view_range)):
                raise ToolError("view_range must be two integers [start, end] (end -1 = last line).")
            start, end = view_range
            end = len(lines) if end == -1 else end
            if start < 1 or start > max(len(lines), 1) or end < start:
                raise ToolError(f"view_range {view_range} is outside 1..{len(lines)}.")
        return "\n".join(f"{n:6}\t{lines[n - 1]}" for n in range(start, min(end, len(lines)) + 1))

    def _str_replace(self, relative: str, tool_input: dict) -> str:
        old = _string_param(tool_input, "old_str")
        new = tool_input.get("new_str", "")
        if not isinstance(new, str):
            raise ToolError("'new_str' must be a string.")
        if not old:
            raise ToolError("'old_str' must not be empty.")
        text = self.current[relative]
        count = text.count(old)
        if count == 0:
            raise ToolError(f"old_str was not found in {relative}; view the file and copy the "
                            "text exactly, whitespace included.")
        if count > 1:
            raise ToolError(f"old_str occurs {count} times in {relative}; include more "
                            "surrounding lines so it is unique.")
        self.current[relative] = text.replace(old, new, 1)
        line = text[: text.index(old)].count("\n") + 1
        return f"Edited {relative} at line {line}."

    def _insert(self, relative: str, tool_input: dict) -> str:
        line = tool_input.get("insert_line")
        key = "insert_text" if "insert_text" in tool_input else "new_str"
        new = _string_param(tool_input, key)
        lines = self.current[relative].splitlines(keepends=True)
        if not isinstance(line, int) or isinstance(line, bool) or not 0 <= line <= len(lines):
            raise ToolError(f"insert_line must be an integer in 0..{len(lines)}.")
        if lines and not lines[-1].endswith("\n") and line == len(lines):
            lines[-1] += "\n"
        block = new if new.endswith("\n") else new + "\n"
        self.current[relative] = "".join(lines[:line]) + block + "".join(lines[line:])
        return f"Inserted {len(block.splitlines())} lines into {relative} after line {line}."


def _string_param(tool_input: dict, key: str) -> str:
    value = tool_input.get(key)
    if not isinstance(value, str):
        raise ToolError(f"Missing or non-string '{key}'.")
    return value


class ToolSession:
    """Routes one proposal's tool calls and remembers its submission."""

    def __init__(self, scratch: ScratchCopy):
        self.scratch = scratch
        self.submission: tuple[str, str] | None = None
        self.errors = 0
        self.turn_errors = 0

    def begin_turn(self) -> None:
        """A new model response: a submit in it must not follow a failed edit of the same turn."""
        self.turn_errors = 0

    def call(self, name: str, tool_input) -> tuple[str, bool]:
        """Run tool `name`; (result text, is_error)."""
        try:
            if name == EDITOR_TOOL_NAME:
                return self.scratch.run(tool_input), False
            if name == SUBMIT_TOOL_NAME:
                if self.turn_errors:
                    raise ToolError("Not submitted: an earlier tool call in this turn failed. "
                                    "Fix it, then call submit_experiment again.")
                self.submission = parse_submission(tool_input)
                return "Submitted.", False
            raise ToolError(f"Unknown tool {name!r}: use {EDITOR_TOOL_NAME} or {SUBMIT_TOOL_NAME}.")
        except ToolError as error:
            self.errors += 1
            self.turn_errors += 1
            return f"Error: {error}", True


def parse_submission(tool_input) -> tuple[str, str]:
    """(one-line description, rationale) from submit_experiment's input, or ToolError."""
    if not isinstance(tool_input, dict):
        raise ToolError("submit_experiment takes an object with 'description' and 'rationale'.")
    description = tool_input.get("description")
    if not isinstance(description, str) or not description.strip():
        raise ToolError("submit_experiment needs a non-empty one-line 'description'.")
    description = " ".join(description.split())
    if len(description) > MAX_DESCRIPTION_CHARS:
        description = description[: MAX_DESCRIPTION_CHARS - 3].rstrip() + "..."
    rationale = tool_input.get("rationale", "")
    return description, rationale.strip() if isinstance(rationale, str) else str(rationale)
