from .runtime import Runtime
from .execution import Result, Diagnostic
