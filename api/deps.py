"""Request dependencies: the app state, one unit of work per request, and the tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.ext.asyncio import AsyncSession

from api.state import AppState
from relight.config import Settings
from relight.jobs.views import UrlBuilder
from relight.models import Tenant
from relight.tenants.service import authenticate


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.relight
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


class UnitOfWork:
    """The request's session, plus what must happen only once its transaction committed."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self._after_commit: list[Callable[[], Awaitable[None]]] = []

    def after_commit(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._after_commit.append(callback)

    async def commit(self) -> None:
        await self.session.commit()
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            await callback()

    async def rollback(self) -> None:
        self._after_commit.clear()
        await self.session.rollback()


async def unit_of_work(state: StateDep) -> AsyncIterator[UnitOfWork]:
    async with state.sessionmaker() as session:
        uow = UnitOfWork(session)
        try:
            yield uow
        except BaseException:
            await uow.rollback()
            raise
        # scope="function": this commit happens before the response is sent.
        await uow.commit()


UnitOfWorkDep = Annotated[UnitOfWork, Depends(unit_of_work, scope="function")]


async def current_tenant(
    uow: UnitOfWorkDep,
    x_api_key: Annotated[str | None, Header(description="Your Relight API key")] = None,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Tenant:
    key = x_api_key
    if key is None and authorization is not None:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer":
            key = credentials.strip()
    return await authenticate(uow.session, key)


TenantDep = Annotated[Tenant, Depends(current_tenant)]


def url_builder(request: Request, settings: SettingsDep) -> UrlBuilder:
    base_url = settings.public_base_url or str(request.base_url)
    return UrlBuilder(
        base_url=base_url,
        secret_key=settings.secret_key,
        output_url_ttl_s=settings.output_url_ttl_s,
    )


UrlsDep = Annotated[UrlBuilder, Depends(url_builder)]
