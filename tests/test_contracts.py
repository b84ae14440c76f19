import math

import pytest

from pipelines.contracts import ContractError, Report, Transaction, decode


def tx(**kw):
    base = dict(transaction_id="t1", timestamp="2018-04-01T00:00:31Z", customer_id="c1", terminal_id="k1", amount=12.5)
    return {**base, **kw}


def test_transaction_round_trip():
    t = decode(Transaction, Transaction(**tx()).to_json())
    assert t.amount == 12.5 and t.timestamp.tzinfo is not None and t.schema_version == 1


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"{not json", "malformed json"),
        (b"[1, 2]", "expected an object"),
        (tx(amount=-1.0), "amount"),
        (tx(amount=math.nan), "finite"),
        (tx(amount=math.inf), "finite"),
        ({k: v for k, v in tx().items() if k != "customer_id"}, "customer_id: Field required"),
        (tx(amount="twelve"), "amount"),
        (tx(schema_version=99), "schema_version"),
        (tx(extra_field=1), "extra_field"),
    ],
)
def test_bad_transactions_name_the_reason(raw, reason):
    with pytest.raises(ContractError) as err:
        decode(Transaction, raw)
    assert reason in err.value.reason


def test_oversized_payload_is_rejected_before_parsing():
    with pytest.raises(ContractError, match="oversized"):
        decode(Transaction, b"x" * 2000, max_bytes=1000)


@pytest.mark.parametrize("raw, reason", [
    (dict(report_id="r", domain="legal", text="x"), "domain"),
    (dict(report_id="r", domain="finance", text="   "), "text is empty"),
])
def test_bad_reports(raw, reason):
    with pytest.raises(ContractError, match=reason):
        decode(Report, raw)
