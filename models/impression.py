"""The radiology impression writer: finding-aware selection from a chest radiograph's findings.

    writer = ImpressionWriter.load()              # fitted parameters (models/checkpoints/summary-writers)
    lines = writer.write(findings)                # [ImpressionLine(text, start, end)], most important first

Guarantees (tests/test_radiology.py holds them):
* a study whose findings assert or suspect a pathology (one of the 12 CheXpert pathologies, by the
  ConText labeller in models/chest_findings.py) never gets the normal template: the impression
  states those findings, one line per finding group, most important first, de-duplicated (a line
  whose observations an earlier line already states is skipped), each line a clause of the source
  (uncertainty words kept, negated clauses and lead-ins like "There is" cut);
* when no pathology is present or suspected, the impression is the normal template, followed by
  incidental findings (granuloma, degenerative spine, ...) when the fitted flag says so;
* the impression is never longer than the findings (shorter templates are tried; a findings text
  shorter than every template is its own impression), so a one- or two-line report never fails the
  output check.

What is fitted on IU X-ray train pairs (`fit`): the priority of each observation (how often an
impression names it when the findings assert it), how many lines an abnormal impression keeps,
whether incidental findings follow the normal template, and the normal template itself (the most
frequent normal impression). Parameters are a small JSON file.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.chest_findings import (INCIDENTAL, NO_FINDING, PATHOLOGIES, PRESENT, SUPPORT_DEVICES, Labelled, Mention,
                                   analyse)

PARAMS_FILE = "impression_writer.json"
DEFAULT_NORMAL = ("No acute cardiopulmonary abnormality.", "No acute disease.", "Normal.")
# Clinical order, used where the data gives no priority: acute and actionable first.
_CLINICAL_ORDER = ("Pneumothorax", "Consolidation", "Pneumonia", "Edema", "Pleural Effusion", "Lung Lesion",
                   "Cardiomegaly", "Enlarged Cardiomediastinum", "Lung Opacity", "Atelectasis", "Fracture",
                   "Pleural Other", *INCIDENTAL, SUPPORT_DEVICES)


@dataclass(frozen=True)
class ImpressionLine:
    text: str
    start: int | None = None  # the source clause this line restates (None: a template)
    end: int | None = None


@dataclass
class ImpressionParams:
    normal: tuple[str, ...] = DEFAULT_NORMAL  # longest first; the first shorter than the findings is used
    priority: dict[str, float] = field(default_factory=lambda: {o: 1.0 - i / 100 for i, o in enumerate(_CLINICAL_ORDER)})
    max_lines: int = 3
    incidental_after_normal: bool = True
    incidental_min_priority: float = 0.2
    state_devices: bool = False
    version: str = "impression-default"
    fitted: dict[str, Any] = field(default_factory=dict)  # fit statistics for the model card

    def to_json(self) -> str:
        d = dict(self.__dict__)
        d["normal"] = list(self.normal)
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ImpressionParams":
        d = json.loads(text)
        d["normal"] = tuple(d.get("normal") or DEFAULT_NORMAL)
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


# --- compression ----------------------------------------------------------------------------------

# A break or trail that starts with blanks is tried only where a blank run starts (`(?<!\s)`): tried at
# every blank of a run, each try read the rest of the run (2.8 s for 20,000 blanks after 'is'). Same
# matches: a try inside a run succeeds only if the one at its start does (whose `\s+` can end anywhere
# the other's can), and no match ends inside a run (every `\s+` is greedy and followed by a non-blank).
_CLAUSE_BREAK = re.compile(r";\s+|,\s+(?:but|however|although|while|whereas)\s+|(?<!\s)\s+but\s+|\.\s+(?=[A-Z])"
                           r"|,\s+(?:and\s+)?(?:no|without)\s+|(?<!\s)\s+(?:and\s+)?without\s+")
_LEAD_IN = re.compile(r"(?:(?:there|there's)\s+(?:is|are|has been|have been|was|were)\s+(?:again\s+)?(?:a\s+|an\s+)?|"
                      r"(?:again\s+)?(?:seen|noted|demonstrated|identified|visualized)\s+(?:is|are)\s+(?:a\s+|an\s+)?|"
                      r"(?:redemonstration|re-demonstration|again demonstrated)\s+of\s+(?:a\s+|an\s+)?|"
                      r"(?:and|also|however|otherwise|additionally|incidentally)[,]?\s+|\d+\.\s+)", re.IGNORECASE)
_TRAIL = re.compile(r"(?<!\s)\s+(?:is|are)\s+(?:again\s+|also\s+|now\s+)?(?:seen|noted|present|identified|demonstrated|"
                    r"visualized|evident|appreciated)\b", re.IGNORECASE)


def _clause(text: str, sent: tuple[int, int], mentions: list[Mention]) -> tuple[int, int]:
    """The part of sentence `sent` holding the positive `mentions`: cut at clause breaks before/after them."""
    a, b = sent
    first, last = min(m.start for m in mentions), max(m.end for m in mentions)
    lo, hi = a, b
    # on the sentence alone, so that its first blank run starts a run for `(?<!\s)`, as before
    for m in _CLAUSE_BREAK.finditer(text[a:b]):
        if a + m.end() <= first:
            lo = max(lo, a + m.end())
        elif a + m.start() >= last:
            hi = min(hi, a + m.start())
            break
    return lo, hi


def compress(text: str, start: int, end: int) -> ImpressionLine:
    """A short statement of text[start:end]: lead-ins and 'is seen' trails removed, capitalised, one full stop."""
    # Lead-ins read in place (pos/endpos): a slice per lead-in copied the rest each time ('and and ...').
    lead = _LEAD_IN.match(text, start, end)
    while lead and lead.end() > start:
        start = lead.end()
        lead = _LEAD_IN.match(text, start, end)
    piece = text[start:end]
    body = _TRAIL.sub("", piece).strip().rstrip(".,;: ")
    if not body:
        body = text[start:end].strip().rstrip(".,;: ")
    body = body[:1].upper() + body[1:]
    return ImpressionLine(text=body + ".", start=start, end=end)


# --- the writer -----------------------------------------------------------------------------------

class ImpressionWriter:
    def __init__(self, params: ImpressionParams | None = None):
        self.params = params or ImpressionParams()

    @classmethod
    def load(cls, directory: str | Path | None) -> "ImpressionWriter":
        path = Path(directory) / PARAMS_FILE if directory is not None else None
        if path is not None and path.is_file():
            return cls(ImpressionParams.from_json(path.read_text()))
        return cls()

    @property
    def version(self) -> str:
        return self.params.version

    def normal_template(self, source_chars: int) -> ImpressionLine | None:
        for t in self.params.normal:
            if len(t) < source_chars:
                return ImpressionLine(t)
        return None

    def _lines(self, lab: Labelled, kinds: tuple[str, ...], limit: int, min_priority: float = -1.0) -> list[ImpressionLine]:
        pr = self.params.priority
        positive = [m for m in lab.mentions if m.observation in kinds and m.label is not None and m.label != 0
                    and pr.get(m.observation, 0.0) >= min_priority]
        by_sent: dict[int, list[Mention]] = {}
        for m in positive:
            by_sent.setdefault(m.sentence, []).append(m)
        ranked = sorted(by_sent.items(), key=lambda kv: (-max(pr.get(m.observation, 0.0) for m in kv[1]), kv[0]))
        picked: list[tuple[set, ImpressionLine]] = []
        covered: set = set()
        seen: set = set()
        for idx, ms in ranked:
            obs = {m.observation for m in ms}
            if obs <= covered and any(obs <= o for o, _ in picked):
                continue  # an earlier (more important) line already states these
            lo, hi = _clause(lab.text, lab.sentences[idx], ms)
            line = compress(lab.text, lo, hi)
            key = re.sub(r"\W+", " ", line.text.lower()).strip()
            if key in seen:
                continue
            seen.add(key)
            covered |= obs
            picked.append((obs, line))
        # merge: a line whose observations another line states as well goes (the fuller line stays)
        kept = [(o, ln) for i, (o, ln) in enumerate(picked)
                if not any(j != i and o <= o2 and (o != o2 or j < i) for j, (o2, _) in enumerate(picked))]
        return [ln for _, ln in kept[:limit]]

    def write(self, findings: str, labelled: Labelled | None = None) -> list[ImpressionLine]:
        lab = labelled or analyse(findings)
        p = self.params
        kinds = PATHOLOGIES + ((SUPPORT_DEVICES,) if p.state_devices else ())
        if lab.labels[NO_FINDING] != PRESENT:
            lines = self._lines(lab, kinds, max(1, p.max_lines))
            if lines:
                return _fit_length(lines, findings)
        normal = self.normal_template(len(findings.strip()) + 1)
        lines = [normal] if normal is not None else []
        if p.incidental_after_normal:
            lines += self._lines(lab, INCIDENTAL, max(0, p.max_lines - 1), p.incidental_min_priority)
        if not lines:
            return [ImpressionLine(findings.strip(), 0, len(findings))]
        return _fit_length(lines, findings)


def _fit_length(lines: list[ImpressionLine], findings: str) -> list[ImpressionLine]:
    """Drop trailing lines until the impression (lines joined by newlines) is not longer than the findings."""
    out = list(lines)
    while len(out) > 1 and len("\n".join(x.text for x in out)) > len(findings):
        out.pop()
    if len("\n".join(x.text for x in out)) > len(findings):
        first = out[0]
        if first.start is not None:
            return [ImpressionLine(findings[first.start:first.end].strip(), first.start, first.end)]
    return out


# --- fitting --------------------------------------------------------------------------------------

def fit(pairs: list[tuple[str, str]], score_fn=None, version: str = "impression-fitted") -> ImpressionParams:
    """Fit the parameters on (findings, impression) pairs; `score_fn(pred, ref) -> float` picks the grid point."""
    labelled = [(analyse(f), analyse(r), r) for f, r in pairs]
    asserted, named = Counter(), Counter()
    normal_refs = Counter()
    for lf, lr, ref in labelled:
        for o in (*PATHOLOGIES, *INCIDENTAL, SUPPORT_DEVICES):
            if lf.positive(o):
                asserted[o] += 1
                named[o] += lr.positive(o)
        if not lr.abnormal and not any(lr.positive(o) for o in INCIDENTAL):
            normal_refs[ref.strip()] += 1
    priority = {}
    for i, o in enumerate(_CLINICAL_ORDER):
        # smoothed P(impression names o | findings assert o); clinical order breaks ties
        priority[o] = round((named[o] + 1) / (asserted[o] + 2) + (len(_CLINICAL_ORDER) - i) * 1e-4, 4)
    top = [t for t, _ in normal_refs.most_common(20) if 4 <= len(t) <= 80]
    normal = tuple(sorted({*top[:1], *DEFAULT_NORMAL}, key=len, reverse=True))
    best, best_score = None, -1.0
    for max_lines in (1, 2, 3, 4):
        for inc in (False, True):
            for min_pr in ((0.2, 0.35, 0.5) if inc else (1.0,)):
                params = ImpressionParams(normal=normal, priority=priority, max_lines=max_lines,
                                          incidental_after_normal=inc, incidental_min_priority=min_pr, version=version)
                w = ImpressionWriter(params)
                if score_fn is None:
                    return params
                s = sum(score_fn("\n".join(x.text for x in w.write(lf.text, lf)), ref) for lf, _, ref in labelled)
                s /= max(1, len(labelled))
                if s > best_score:
                    best, best_score = params, s
    assert best is not None
    best.fitted = {"pairs": len(pairs), "train_score": round(best_score, 4),
                   "normal_reference_share": round(sum(normal_refs.values()) / max(1, len(pairs)), 4),
                   "asserted_in_findings": dict(asserted), "named_in_impression": dict(named)}
    return best
