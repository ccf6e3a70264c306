"""Server-sent events for Flask, fanned out from Redis pub/sub."""

from .blueprint import ServerSentEventsBlueprint as ServerSentEventsBlueprint
from .blueprint import send_event as send_event
from .blueprint import sse as sse
from .message import Message as Message
from .publisher import Publisher as Publisher
