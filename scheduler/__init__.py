"""remind: repayment reminders and collection contact inside the lender's policy and the law."""

__version__ = "0.1.0"
