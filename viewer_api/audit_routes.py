"""placeholder: filled by its issue-5 work"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
