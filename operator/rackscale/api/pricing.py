"""GPU prices and what they add up to: cost per hour of a deployment and of idle GPUs.

Money is Decimal throughout, never float: the figures are checked against hand arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from pydantic import Field

from rackscale.api.common import Spec

CENT = Decimal("0.01")


class Pricing(Spec):
    """What one GPU of the pool costs per hour: the figure cost reports multiply."""

    per_gpu_hour: str = Field(
        pattern=r"^[0-9]{1,9}(\.[0-9]{1,6})?$",
        description='Price of one GPU for one hour, a decimal string such as "3.20".',
    )
    currency: str = Field(
        default="USD", pattern="^[A-Z]{3}$", description="ISO 4217 currency code."
    )

    @property
    def price(self) -> Price:
        return Price(Decimal(self.per_gpu_hour), self.currency)


@dataclass(frozen=True, slots=True)
class Price:
    """A price per GPU-hour in one currency."""

    per_gpu_hour: Decimal
    currency: str = "USD"

    def of(self, gpus: int) -> Decimal:
        return self.per_gpu_hour * gpus


def parse_price(text: str) -> Price:
    """`2.10` or `2.10 USD`, as the operator's flag and `rackscale plan` take it."""
    amount, _, currency = text.strip().partition(" ")
    currency = currency.strip() or "USD"
    try:
        value = Decimal(amount)
    except InvalidOperation as error:
        raise ValueError(f"{text!r} is not a price: write it as 2.10 or 2.10 USD") from error
    if value < 0 or not value.is_finite():
        raise ValueError(f"{text!r} is not a price: it must be a positive decimal")
    if len(currency) != 3 or not currency.isalpha() or not currency.isupper():
        raise ValueError(f"{text!r}: the currency must be a 3-letter ISO 4217 code, e.g. USD")
    return Price(value, currency)


def cost_per_hour(
    rack_gpus: int, device_gpus: int, pool: Price | None, ordinary: Price | None
) -> tuple[Decimal, str] | None:
    """What a deployment's GPUs cost per hour: those in the pool at the pool's price, those in
    device-plugin mode at the ordinary-node price when one is given (and in the same currency).

    None when nothing can be priced, or when GPUs in the pool have no price (a figure that left
    them out would read as the whole cost)."""
    if rack_gpus and pool is None:
        return None
    parts = [(rack_gpus, pool)] if pool else []
    if ordinary and device_gpus and (pool is None or pool.currency == ordinary.currency):
        parts.append((device_gpus, ordinary))
    if not parts:
        return None
    currency = parts[0][1].currency
    return sum((price.of(gpus) for gpus, price in parts), Decimal(0)), currency


def money(amount: Decimal) -> str:
    """An amount as people write it: at least two decimals, more only when the price has them."""
    if amount == amount.quantize(CENT):
        return f"{amount.quantize(CENT):f}"
    return f"{amount.normalize():f}"
