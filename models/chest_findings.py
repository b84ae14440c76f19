"""Chest radiograph findings: CheXpert-style observation labels with medspaCy's ConText.

    labels = label_text("No pneumothorax. Small left pleural effusion.")
    labels["Pleural Effusion"] == PRESENT and labels["Pneumothorax"] == ABSENT and labels["No Finding"] == ABSENT

One labeller serves the impression writer (models/impression.py) and the clinical metric
(`argus eval summaries`), so a summary is judged by the same rules that wrote it.

Pipeline (no downloaded model): `spacy.blank("en")` + medspaCy's PyRuSH sentencizer + a target
matcher with the phrase lists below + ConText (medspaCy's default modifier rules: negation,
uncertainty, historical, hypothetical, family). Per observation, over all mentions in a text:
asserted (not negated / uncertain / hypothetical / family) -> PRESENT, else uncertain -> UNCERTAIN,
else negated -> ABSENT, not mentioned -> None (CheXpert's precedence). "No Finding" is PRESENT when
no pathology (the 12 between it and Support Devices) is present or uncertain.

Observations outside the 14 that radiologists still report (granuloma, degenerative spine,
hyperinflation, ...) are labelled as INCIDENTAL kinds: the writer mentions them, the metric does not
count them.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from functools import lru_cache

PRESENT, ABSENT, UNCERTAIN = 1, 0, -1

NO_FINDING = "No Finding"
SUPPORT_DEVICES = "Support Devices"
PATHOLOGIES = ("Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Lung Opacity", "Edema", "Consolidation",
               "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture")
OBSERVATIONS = (NO_FINDING, *PATHOLOGIES, SUPPORT_DEVICES)  # the 14 CheXpert observations
INCIDENTAL = ("Granuloma", "Degenerative Changes", "Hyperinflation", "Hiatal Hernia", "Aortic Change",
              "Diaphragm Elevation")
IGNORED = "_ignored"  # phrases that would otherwise match a shorter target ("pericardial effusion")

_SEV = r"(?:(?:very |quite )?(?:mild|mildly|moderate|moderately|marked|markedly|severe|severely|slight|slightly|minimal|"\
       r"minimally|borderline|stable|stably|again|persistent|persistently|upper limits of normal to|top normal to|grossly|"\
       r"now|still|somewhat|overall|likely|possibly|probably)\s+)*"
_IS = r"(?:\s+(?:is|are|appears?|remains?|seems?|looks?|continues to be|has become|may be|is again|are again))?\s+"

# (observation, literal phrases, regexes). Literals match whole tokens case-insensitively; regexes are
# medspaCy RegexMatcher patterns over the sentence text.
_RULES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("Enlarged Cardiomediastinum",
     ("widened mediastinum", "mediastinal widening", "widening of the mediastinum", "mediastinal enlargement",
      "enlarged mediastinum", "enlarged cardiomediastinal silhouette", "enlargement of the cardiomediastinal silhouette",
      "prominent mediastinum", "mediastinal prominence", "mediastinal mass"),
     (r"(?:cardiomediastinal|mediastinal) (?:silhouette|contours?|width)" + _IS + _SEV + r"(?:enlarged|widened|prominent|increased)",
      r"mediastinum" + _IS + _SEV + r"(?:enlarged|widened|prominent)")),
    ("Cardiomegaly",
     ("cardiomegaly", "enlarged heart", "cardiac enlargement", "enlarged cardiac silhouette", "enlargement of the heart",
      "enlargement of the cardiac silhouette", "enlarged heart size", "cardiac silhouette enlargement",
      "increased heart size", "enlarged cardiac contour", "enlargement in the cardiac silhouette",
      "enlargement of the cardiac contour", "enlargement of the heart size"),
     (r"(?:heart|cardiac silhouette|heart size|cardiac size|cardiac contour|heart shadow|cardiac shadow)" + _IS + _SEV
      + r"(?:enlarged|increased|large|prominent)",)),
    ("Lung Lesion",
     ("nodule", "nodules", "nodular opacity", "nodular opacities", "nodular density", "nodular densities", "mass",
      "masses", "lung lesion", "pulmonary lesion", "cavitary lesion", "lesion", "lesions", "tumor", "tumors",
      "neoplasm", "carcinoma", "malignancy", "metastasis", "metastases", "metastatic disease", "cavitation"),
     ()),
    ("Lung Opacity",
     ("opacity", "opacities", "opacification", "opacified", "infiltrate", "infiltrates", "infiltration",
      "airspace disease", "air space disease", "air-space disease", "airspace opacity", "airspace process",
      "increased density", "density", "densities", "interstitial markings", "interstitial marking",
      "interstitial prominence", "interstitial opacities", "interstitial disease", "interstitial lung disease",
      "reticular opacities", "reticulonodular", "reticular", "scarring", "scar", "scars", "fibrosis", "fibrotic",
      "peribronchial thickening", "peribronchial cuffing", "bronchial wall thickening", "ground-glass",
      "ground glass", "haziness", "hazy", "streaky", "bronchiectasis", "increased markings",
      "increased lung markings", "coarsened markings", "coarse markings", "chronic changes", "chronic lung disease"),
     ()),
    ("Edema",
     ("edema", "pulmonary edema", "interstitial edema", "vascular congestion", "pulmonary vascular congestion",
      "venous congestion", "congestion", "heart failure", "chf", "cephalization", "kerley b lines", "kerley lines",
      "fluid overload", "vascular redistribution"),
     (r"(?:pulmonary )?vasculature" + _IS + _SEV + r"(?:prominent|congested|engorged|indistinct)",)),
    ("Consolidation", ("consolidation", "consolidations", "consolidative", "consolidated"), ()),
    ("Pneumonia", ("pneumonia", "pneumonias", "infection", "infectious process", "infectious", "pneumonitis",
                   "bronchopneumonia", "aspiration"), ()),
    ("Atelectasis", ("atelectasis", "atelectases", "atelectatic", "collapse", "collapsed", "volume loss",
                     "subsegmental atelectasis", "discoid atelectasis", "platelike atelectasis"), ()),
    ("Pneumothorax", ("pneumothorax", "pneumothoraces", "hydropneumothorax", "pneumothoraxes"), ()),
    ("Pleural Effusion",
     ("pleural effusion", "pleural effusions", "effusion", "effusions", "pleural fluid", "hydrothorax",
      "costophrenic angle blunting", "costophrenic blunting", "blunted costophrenic angle", "blunted costophrenic angles",
      "blunting of the costophrenic angle", "blunting of the costophrenic angles", "blunting of the costophrenic",
      "blunting of the costophrenic sulci", "meniscus"),
     (r"blunting of the (?:left|right|bilateral|posterior|lateral|both)(?: (?:left|right|bilateral|posterior|lateral))* "
      r"(?:costophrenic|cp) (?:angles?|sulci|sulcus|recess(?:es)?)",
      r"(?:costophrenic|cp) (?:angles?|sulci|sulcus)" + _IS + _SEV + r"blunted")),
    ("Pleural Other",
     ("pleural thickening", "pleural plaque", "pleural plaques", "pleural scarring", "fibrothorax",
      "pleural calcification", "pleural calcifications", "calcified pleural plaques", "apical capping",
      "pleural-parenchymal scarring", "pleural based opacity", "pleural-based opacity"),
     ()),
    ("Fracture", ("fracture", "fractures", "fractured", "compression deformity", "compression deformities",
                  "compression fracture", "rib deformity"), ()),
    ("Support Devices",
     ("pacemaker", "pacer", "defibrillator", "aicd", "icd", "catheter", "picc", "picc line", "central line",
      "central venous catheter", "port", "port-a-cath", "porta-cath", "endotracheal tube", "et tube",
      "nasogastric tube", "ng tube", "enteric tube", "feeding tube", "chest tube", "tracheostomy", "sternotomy",
      "sternotomy wires", "sternal wires", "median sternotomy", "surgical clips", "clips", "stent", "stents",
      "valve replacement", "prosthetic valve", "hardware", "leads", "lead", "wires", "device", "drain", "cabg",
      "fixation", "orthopedic hardware", "loop recorder", "generator", "hemodialysis catheter"),
     ()),
    ("Granuloma", ("granuloma", "granulomas", "granulomata", "granulomatous disease", "calcified granuloma",
                   "calcified granulomas", "calcified lymph nodes", "calcified nodes", "calcified hilar nodes"), ()),
    ("Degenerative Changes", ("degenerative changes", "degenerative change", "degenerative disease", "spondylosis",
                              "osteophytes", "osteophyte", "scoliosis", "dextroscoliosis", "levoscoliosis", "kyphosis",
                              "osteopenia", "degenerative", "arthritis", "arthritic changes", "dextrocurvature",
                              "levocurvature", "curvature"), ()),
    ("Hyperinflation", ("hyperinflation", "hyperinflated", "hyperexpanded", "hyperexpansion", "hyperaeration",
                        "emphysema", "emphysematous", "copd", "chronic obstructive pulmonary disease",
                        "obstructive lung disease", "flattened diaphragms", "flattening of the diaphragms",
                        "flattening of the hemidiaphragms", "flattened hemidiaphragms", "bullae", "bulla"), ()),
    ("Hiatal Hernia", ("hiatal hernia", "hiatus hernia", "hernia"), ()),
    ("Aortic Change", ("tortuous aorta", "aortic tortuosity", "tortuosity", "tortuous", "ectatic aorta",
                       "aortic ectasia", "ectasia", "atherosclerotic", "atherosclerosis", "aortic calcification",
                       "aortic calcifications", "calcified aorta", "aortic atherosclerosis", "unfolded aorta",
                       "unfolding of the aorta", "aortic knob calcification", "vascular calcification",
                       "vascular calcifications"), ()),
    ("Diaphragm Elevation", ("elevated hemidiaphragm", "elevated left hemidiaphragm", "elevated right hemidiaphragm",
                             "elevation of the left hemidiaphragm", "elevation of the right hemidiaphragm",
                             "elevation of the hemidiaphragm", "eventration"), ()),
    (IGNORED, ("pericardial effusion", "no acute", "normal", "prior granulomatous", "nodular contour",
               "chronic obstructive", "lung volumes", "low lung volumes", "breast shadows", "nipple shadow",
               "nipple shadows", "soft tissue density", "soft tissue densities", "overlying soft tissue"), ()),
)


# Report phrasings medspaCy's default ConText rules (general clinical notes) do not cover.
_P, _N, _H = "POSSIBLE_EXISTENCE", "NEGATED_EXISTENCE", "HYPOTHETICAL"
_CONTEXT_RULES = (
    ("may represent", _P, "FORWARD"), ("could represent", _P, "FORWARD"), ("might represent", _P, "FORWARD"),
    ("may reflect", _P, "FORWARD"), ("may be", _P, "FORWARD"), ("could be", _P, "FORWARD"),
    ("suggest", _P, "FORWARD"), ("suggests", _P, "FORWARD"), ("suggesting", _P, "FORWARD"),
    ("differential diagnosis includes", _P, "FORWARD"), ("differential includes", _P, "FORWARD"),
    ("differential diagnosis", _P, "FORWARD"), ("concerning for", _P, "FORWARD"), ("suspicious for", _P, "FORWARD"),
    ("versus", _P, "BIDIRECTIONAL"), ("vs", _P, "BIDIRECTIONAL"), ("likely", _P, "BIDIRECTIONAL"),
    ("probable", _P, "FORWARD"), ("probably", _P, "FORWARD"), ("questionable", _P, "FORWARD"),
    ("question of", _P, "FORWARD"), ("cannot be excluded", _P, "BACKWARD"), ("not excluded", _P, "BACKWARD"),
    ("can not be excluded", _P, "BACKWARD"), ("not entirely excluded", _P, "BACKWARD"), ("consider", _P, "FORWARD"),
    ("possibly", _P, "BIDIRECTIONAL"), ("may not be", _H, "BACKWARD"), ("may not be demonstrated", _H, "BACKWARD"),
    ("no longer", _N, "FORWARD"), ("resolution of", _N, "FORWARD"), ("interval resolution of", _N, "FORWARD"),
    ("removal of", _N, "FORWARD"), ("clear of", _N, "FORWARD"), ("free of", _N, "FORWARD"),
    ("no evidence of", _N, "FORWARD"), ("without evidence of", _N, "FORWARD"), ("no signs of", _N, "FORWARD"),
    ("no visible", _N, "FORWARD"), ("evaluate for", _H, "FORWARD"), ("to evaluate", _H, "FORWARD"),
    ("to exclude", _H, "FORWARD"), ("assess for", _H, "FORWARD"), ("no definite", _N, "FORWARD"), ("not", _N, "FORWARD"), ("nor", _N, "FORWARD"),
)


@dataclass(frozen=True)
class Mention:
    observation: str
    text: str
    start: int  # character offsets into the labelled text
    end: int
    sentence: int  # index into Labelled.sentences
    negated: bool
    uncertain: bool
    other: bool  # hypothetical / family / historical: not about this study now

    @property
    def asserted(self) -> bool:
        return not (self.negated or self.uncertain or self.other)

    @property
    def label(self) -> int | None:
        if self.other:
            return None
        if self.negated:
            return ABSENT
        return UNCERTAIN if self.uncertain else PRESENT


@dataclass(frozen=True)
class Labelled:
    text: str
    sentences: tuple[tuple[int, int], ...]  # character ranges
    mentions: tuple[Mention, ...]
    labels: dict[str, int | None]  # the 14 observations + incidental kinds

    @property
    def abnormal(self) -> bool:
        """A pathology (one of the 12) is present or uncertain."""
        return self.labels[NO_FINDING] != PRESENT

    def positive(self, observation: str) -> bool:
        return self.labels.get(observation) in (PRESENT, UNCERTAIN)


@lru_cache(maxsize=1)
def _nlp():
    from loguru import logger

    logger.disable("PyRuSH")  # its DEBUG trace per sentence
    import medspacy
    from medspacy.context import ConTextRule
    from medspacy.ner import TargetRule

    nlp = medspacy.load(enable=["medspacy_pyrush", "medspacy_target_matcher", "medspacy_context"])
    rules = []
    for observation, literals, regexes in _RULES:
        rules += [TargetRule(lit, observation) for lit in literals]
        rules += [TargetRule(rx, observation, pattern=rx) for rx in regexes]
    nlp.get_pipe("medspacy_target_matcher").add(rules)
    nlp.get_pipe("medspacy_context").add([ConTextRule(lit, cat, direction=d) for lit, cat, d in _CONTEXT_RULES])
    return nlp


_DOUBLE_STOP = re.compile(r"(?<=[.!?])[.!?]")


def label_text(text: str) -> dict[str, int | None]:
    return analyse(text).labels


def analyse(text: str) -> Labelled:
    """Sentences, mentions with their ConText attributes, and per-observation labels of `text`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # W036: ConText's empty helper matcher
        # ".." (typos, de-identification) hides a sentence end from PyRuSH and would stretch a
        # negation over the next sentence: same-length normalisation keeps every offset
        doc = _nlp()(_DOUBLE_STOP.sub(" ", text or ""))
    sents = list(doc.sents)
    starts = [s.start_char for s in sents]
    mentions = []
    for ent in doc.ents:
        if ent.label_ == IGNORED:
            continue
        idx = max(0, sum(1 for st in starts if st <= ent.start_char) - 1)
        mentions.append(Mention(
            observation=ent.label_, text=ent.text, start=ent.start_char, end=ent.end_char, sentence=idx,
            negated=bool(ent._.is_negated), uncertain=bool(ent._.is_uncertain),
            other=bool(ent._.is_hypothetical or ent._.is_family or ent._.is_historical)))
    labels: dict[str, int | None] = {o: None for o in (*OBSERVATIONS, *INCIDENTAL)}
    rank = {PRESENT: 3, UNCERTAIN: 2, ABSENT: 1}
    for m in mentions:
        lab = m.label
        if lab is None:
            continue
        cur = labels.get(m.observation)
        if cur is None or rank[lab] > rank[cur]:
            labels[m.observation] = lab
    labels[NO_FINDING] = ABSENT if any(labels[p] in (PRESENT, UNCERTAIN) for p in PATHOLOGIES) else PRESENT
    return Labelled(text=text or "", sentences=tuple((s.start_char, s.end_char) for s in sents),
                    mentions=tuple(mentions), labels=labels)


_CHEST = re.compile(r"\b(?:lungs?|pleural|pneumothorax|cardiac|cardiomediastinal|heart|mediastin\w*|hila|hilar|"
                    r"costophrenic|hemidiaphragms?|thorax|thoracic|airspace|pulmonary)\b", re.IGNORECASE)


def is_chest_radiograph(text: str, max_chars: int = 3000) -> bool:
    """A short text about the chest: a radiograph's findings (not an article that mentions lungs)."""
    if not text or len(text) > max_chars:
        return False
    return len(_CHEST.findall(text[:max_chars])) >= 1
