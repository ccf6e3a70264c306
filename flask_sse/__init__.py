"""Server-sent events for Flask, fanned out from Redis pub/sub."""

from importlib.metadata import version as _version

from .blueprint import ServerSentEventsBlueprint as ServerSentEventsBlueprint
from .blueprint import send_event as send_event
from .blueprint import sse as sse
from .message import Message as Message
from .publisher import Publisher as Publisher

#: The installed distribution's version (distribution ``flask-sse-hub``, import ``flask_sse``).
__version__ = _version("flask-sse-hub")
