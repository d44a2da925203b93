"""The value types' fast positional builder makes exactly what their constructors make."""

from __future__ import annotations

from dataclasses import dataclass, fields

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.models import (
    Account,
    PastContact,
    PlannedContact,
    SuppressedContact,
    positional_builder,
)

VALUE_TYPES = [Account, PastContact, PlannedContact, SuppressedContact]


@pytest.mark.parametrize("cls", VALUE_TYPES, ids=lambda c: c.__name__)
@given(data=st.data())
def test_a_built_value_equals_the_constructed_one(cls: type, data: st.DataObject) -> None:
    amounts = st.decimals(allow_nan=False)  # a NaN amount equals nothing, itself included
    made = data.draw(
        st.builds(cls, **{f.name: amounts for f in fields(cls) if f.type == "Decimal"})
    )
    values = [getattr(made, f.name) for f in fields(cls)]
    built = positional_builder(cls)(*values)
    assert type(built) is cls
    assert all(getattr(built, f.name) is getattr(made, f.name) for f in fields(cls))
    assert repr(built) == repr(made)
    assert built == made
    assert hash(built) == hash(made)
    with pytest.raises(AttributeError):
        built.__setattr__(fields(cls)[0].name, None)  # still frozen


def test_every_field_must_be_given() -> None:
    build = positional_builder(SuppressedContact)
    with pytest.raises(TypeError):
        build("A1", "sms")


@dataclass(frozen=True, slots=True)
class _Checked:
    amount: int

    def __post_init__(self) -> None:
        if self.amount < 0:
            raise ValueError("negative")


@dataclass(slots=True)
class _Mutable:
    amount: int


@dataclass(frozen=True)
class _NoSlots:
    amount: int


@pytest.mark.parametrize("cls", [_Checked, _Mutable, _NoSlots, int])
def test_types_whose_init_does_more_than_set_slots_are_refused(cls: type) -> None:
    with pytest.raises(TypeError):
        positional_builder(cls)
