"""Radiology impressions: never a false normal, the normal template when all is normal, short reports
never fail, and the clinical metric counts what it should. No data files, no downloaded models."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.chest_findings import (ABSENT, NO_FINDING, PRESENT, UNCERTAIN, analyse, is_chest_radiograph, label_text)
from models.impression import DEFAULT_NORMAL, ImpressionWriter
from pipelines.clinical_metrics import ClinicalScores, label_study

# observation -> ways a report states it (as a noun phrase)
PHRASES = {
    "Cardiomegaly": ["cardiomegaly", "mild cardiomegaly"],
    "Lung Lesion": ["a right upper lobe nodule", "a left lung mass"],
    "Lung Opacity": ["a left basilar opacity", "patchy airspace disease", "interstitial opacities"],
    "Edema": ["pulmonary edema", "mild interstitial edema"],
    "Consolidation": ["right lower lobe consolidation", "focal consolidation"],
    "Pneumonia": ["pneumonia"],
    "Atelectasis": ["bibasilar atelectasis", "left basilar atelectasis"],
    "Pneumothorax": ["a small right pneumothorax", "pneumothorax"],
    "Pleural Effusion": ["a small left pleural effusion", "bilateral pleural effusions"],
    "Pleural Other": ["right apical pleural thickening"],
    "Fracture": ["a healed left rib fracture", "an acute rib fracture"],
}
ASSERT = ["There is {p}.", "{P} is present.", "{P}."]
NEGATE = ["No {p}.", "There is no {p}.", "No evidence of {p}."]
SUSPECT = ["Possible {p}.", "{P} cannot be excluded."]
NORMAL_FILLER = ["The heart is normal in size.", "The lungs are clear.", "The mediastinum is unremarkable.",
                 "The osseous structures are intact."]

WRITER = ImpressionWriter()


def _sentence(template: str, phrase: str) -> str:
    return template.format(p=phrase, P=phrase[:1].upper() + phrase[1:])


finding = st.tuples(st.sampled_from(sorted(PHRASES)), st.sampled_from(["assert", "negate", "suspect"]),
                    st.integers(0, 5), st.integers(0, 5))


def _render(items, fillers) -> tuple[list[str], bool]:
    sents, abnormal = [], False
    for obs, polarity, i, j in items:
        phrase = PHRASES[obs][i % len(PHRASES[obs])]
        templates = {"assert": ASSERT, "negate": NEGATE, "suspect": SUSPECT}[polarity]
        sents.append(_sentence(templates[j % len(templates)], phrase))
        abnormal |= polarity != "negate"
    sents += fillers
    return sents, abnormal


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(finding, min_size=1, max_size=4), fillers=st.lists(st.sampled_from(NORMAL_FILLER), max_size=3),
       seed=st.randoms(use_true_random=False))
def test_abnormal_findings_never_get_the_normal_template(items, fillers, seed):
    sents, abnormal = _render(items, fillers)
    seed.shuffle(sents)
    text = " ".join(sents)
    lines = WRITER.write(text)
    impression = "\n".join(x.text for x in lines)
    assert len(impression) <= len(text)
    if abnormal:
        assert not any(t in impression for t in DEFAULT_NORMAL), (text, impression)
        assert analyse(impression).abnormal, (text, impression)
    else:
        assert impression in DEFAULT_NORMAL, (text, impression)


def test_double_full_stop_does_not_carry_a_negation_over():
    text = "No bibasilar atelectasis.. There is bibasilar atelectasis."
    assert analyse(text).abnormal and DEFAULT_NORMAL[0] not in "\n".join(x.text for x in WRITER.write(text))


def test_all_normal_findings_get_the_normal_template():
    text = ("The heart is normal in size. The mediastinum is unremarkable. The lungs are clear. "
            "There is no pneumothorax or pleural effusion. No focal airspace disease.")
    assert [x.text for x in WRITER.write(text)] == [DEFAULT_NORMAL[0]]


def test_abnormal_impression_is_merged_and_ordered():
    text = ("Heart size is mildly enlarged. There is a small left pleural effusion. No pneumothorax. "
            "There is a small left pleural effusion with adjacent atelectasis.")
    lines = [x.text for x in WRITER.write(text)]
    assert lines and len(lines) == len(set(lines))
    assert not any(t in " ".join(lines) for t in DEFAULT_NORMAL)
    assert any("effusion" in ln for ln in lines) and any("enlarged" in ln for ln in lines)
    assert sum("effusion" in ln for ln in lines) == 1  # de-duplicated


@pytest.mark.parametrize("text", ["Lungs clear.", "Normal chest.", "Cardiomegaly", "No acute disease. Lungs clear.",
                                  "Small left effusion.\nNo pneumothorax."])
def test_short_findings_impression_is_never_longer(text):
    lines = WRITER.write(text)
    impression = "\n".join(x.text for x in lines)
    assert impression.strip() and len(impression) <= len(text)


def test_short_report_never_errors_through_the_summariser():
    from pipelines.report_summariser import Summarizer
    from pipelines.contracts import Report
    from pipelines.validation import validate_summaries

    summ = Summarizer.tiny_random()
    for i, text in enumerate(["Lungs clear.", "Heart normal. Lungs clear.", "Small left pleural effusion."]):
        rep = Report(report_id=f"r{i}", domain="medical", text=text)
        out = summ.summarize(rep)
        assert out.summary.strip()
        assert validate_summaries([out], sources={rep.report_id: text}, engine="fast").ok, out.summary
    abnormal = summ.summarize(Report(report_id="a", domain="medical", text="Heart size is enlarged. Lungs are clear. "
                                     "No pneumothorax. Small right pleural effusion."), mode="generative")
    assert "No acute" not in abnormal.summary and "effusion" in abnormal.summary


def test_labeller_polarity():
    labels = label_text("No pneumothorax. Small left pleural effusion. Possible right basilar atelectasis.")
    assert labels["Pneumothorax"] == ABSENT
    assert labels["Pleural Effusion"] == PRESENT
    assert labels["Atelectasis"] == UNCERTAIN
    assert labels[NO_FINDING] == ABSENT
    assert label_text("The lungs are clear. No pleural effusion.")[NO_FINDING] == PRESENT
    assert is_chest_radiograph("The lungs are clear.") and not is_chest_radiograph("Revenue rose 5%.")


def test_clinical_metric_on_hand_made_cases():
    scores = ClinicalScores()
    normal_ref = label_study("The lungs are clear.", "No acute cardiopulmonary abnormality.")
    abnormal_ref = label_study("Small left pleural effusion. Heart size is enlarged.",
                               "Cardiomegaly. Small left pleural effusion.")
    scores.add(normal_ref, "No acute cardiopulmonary abnormality.")  # right: No Finding TP
    scores.add(abnormal_ref, "No acute cardiopulmonary abnormality.")  # false normal: 2 FN, 1 FP (No Finding)
    scores.add(abnormal_ref, "Small left pleural effusion.")  # 1 TP, 1 FN
    row = scores.row()
    assert row["abnormal_refs"] == 2 and row["false_normals"] == 1
    assert row["false_normal_rate"] == 0.5
    assert row["false_normal_vs_findings"] == 0.5
    # TP: No Finding (1) + effusion (1) = 2; FP: No Finding on the false normal = 1; FN: 2 + 1 = 3
    assert row["obs_precision"] == round(100 * 2 / 3, 2)
    assert row["obs_recall"] == round(100 * 2 / 5, 2)
    p, r = 2 / 3, 2 / 5
    assert row["obs_f1"] == round(100 * 2 * p * r / (p + r), 2)


def test_eval_scores_front_door_predictions_with_clinical_metrics(tmp_path):
    import json

    from pipelines.eval_summaries import run_eval, write_html  # noqa: F401

    records = [
        {"id": "n1", "domain": "medical", "document": "The lungs are clear. No pleural effusion.",
         "summary": "No acute cardiopulmonary abnormality."},
        {"id": "a1", "domain": "medical", "document": "Heart size is enlarged. Small left pleural effusion.",
         "summary": "Cardiomegaly. Small left pleural effusion."},
        {"id": "a2", "domain": "medical", "document": "Right lower lobe consolidation. The heart is normal.",
         "summary": "Right lower lobe pneumonia."},
    ]
    data = tmp_path / "iu.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    preds = tmp_path / "out.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "n1", "summary": "No acute cardiopulmonary abnormality.", "error": None, "model_version": "v"},
        {"id": "a1", "summary": "No acute cardiopulmonary abnormality.", "error": None, "model_version": "v"},
        {"id": "a2", "summary": None, "error": "boom", "model_version": None}]))
    html = tmp_path / "r.html"
    rows = run_eval([data], predictions=[preds], report=html, progress=False)
    by = {r["system"]: r for r in rows}
    assert by["argus"]["errors"] == 1 and by["argus"]["model_version"] == "v"
    assert by["argus"]["false_normal_rate"] == 1.0  # a1 false normal; a2 failed: reports nothing abnormal either
    assert by["constant-normal"]["false_normal_rate"] == 1.0
    text = html.read_text()
    assert "Worst cases" in text and "false_normal" in text and "a1" in text
