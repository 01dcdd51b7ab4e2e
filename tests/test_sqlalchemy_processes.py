"""SQLAlchemy Core and ORM over a live 3-node cluster, through replidb's dialect:
``replidb://host:port,host:port/``."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import ForeignKey, String, func, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from replidb.sqla import create_engine, engine_url
from replidb.testing.local_cluster import LocalCluster

pytestmark = pytest.mark.slow


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    books: Mapped[list[Book]] = relationship(back_populates="author", cascade="all")


class Book(Base):
    __tablename__ = "books"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))
    author: Mapped[Author] = relationship(back_populates="books")


def test_urls_name_every_node() -> None:
    url = engine_url("replidb://10.0.0.1:7101,10.0.0.2:7102/?consistency=linearizable")
    assert url.query == {"host": ("10.0.0.1:7101", "10.0.0.2:7102"), "consistency": "linearizable"}
    args = url.get_dialect()().create_connect_args(url)
    assert args == (
        [],
        {"addresses": ["10.0.0.1:7101", "10.0.0.2:7102"], "consistency": "linearizable"},
    )


def test_the_orm_works_against_a_live_cluster(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, extra=("--sync", "quorum"))
    cluster.start_all()
    try:
        cluster.wait_for_leader()
        engine = create_engine(f"replidb://{cluster.connect}/")
        Base.metadata.create_all(engine)
        with Session(engine) as session:
            ada = Author(name="Ada", books=[Book(title="Notes"), Book(title="Sketch")])
            session.add_all([ada, Author(name="Brian", books=[Book(title="C")])])
            session.commit()
            assert ada.id is not None and all(b.id for b in ada.books)
        with Session(engine) as session:
            titles = session.scalars(
                select(Book.title).join(Author).where(Author.name == "Ada").order_by(Book.id)
            ).all()
            assert titles == ["Notes", "Sketch"]
            book = session.scalars(select(Book).where(Book.title == "C")).one()
            book.title = "The C Book"
            session.delete(session.scalars(select(Author).where(Author.name == "Ada")).one())
            session.commit()
        cluster.wait_converged("books")  # every node holds the result
        for node in cluster.ids:  # (and Core works through each one)
            one = create_engine(f"replidb://{cluster.addresses[node]}/?consistency=linearizable")
            with one.connect() as conn:
                assert conn.execute(select(func.count()).select_from(Book)).scalar() == 1
                assert conn.execute(text("SELECT title FROM books")).scalar() == "The C Book"
            one.dispose()
        engine.dispose()
    finally:
        cluster.stop_all()
