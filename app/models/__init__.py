"""All models, imported here so Flask-Migrate sees every table."""

from app.models.cart import Cart, LineItem
from app.models.catalog import Product
from app.models.notice import Notice, NoticeKind, NoticeStatus
from app.models.order import DisplayIdSequence, Order, OrderChange, OrderItem, OrderStatus
from app.models.order_edit import OrderEdit, OrderEditStatus
from app.models.payment import (
    Capture,
    CaptureAttempt,
    OrderTransaction,
    Payment,
    PaymentCollection,
    PaymentSession,
    PaymentSessionStatus,
    PaymentStatus,
    Refund,
    RefundStatus,
)
from app.models.reconciliation_run import ReconciliationRun
from app.models.staff import StaffUser
from app.models.webhook_event import WebhookEvent

__all__ = [
    "Capture",
    "CaptureAttempt",
    "Cart",
    "DisplayIdSequence",
    "LineItem",
    "Notice",
    "NoticeKind",
    "NoticeStatus",
    "Order",
    "OrderChange",
    "OrderEdit",
    "OrderEditStatus",
    "OrderItem",
    "OrderStatus",
    "OrderTransaction",
    "Payment",
    "PaymentCollection",
    "PaymentSession",
    "PaymentSessionStatus",
    "PaymentStatus",
    "Product",
    "ReconciliationRun",
    "Refund",
    "RefundStatus",
    "StaffUser",
    "WebhookEvent",
]
