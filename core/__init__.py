"""The shared kit that every stage may import (it imports no stage): CLI error handling, range checks."""
