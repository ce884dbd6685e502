"""Create the database named in DATABASE_URL when it does not exist (run by deploy/run.sh)."""

import os

import dj_database_url
import psycopg
from psycopg import sql

url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/annotator")
cfg = dj_database_url.parse(url)
conninfo = dict(
    host=cfg["HOST"], port=cfg["PORT"] or 5432, user=cfg["USER"], password=cfg["PASSWORD"] or None
)
with psycopg.connect(dbname="postgres", autocommit=True, **conninfo) as conn:
    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [cfg["NAME"]]).fetchone():
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(cfg["NAME"])))
        print(f"created database {cfg['NAME']}")
