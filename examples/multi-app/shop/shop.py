"""The "shop" app of the multi-app example: Flask, served for the host shop.example.test."""

from flask import Flask, url_for

app = Flask(__name__, static_folder=None)  # the front serves /static/, not the app

PRODUCTS = {"1": "teapot", "2": "kettle"}


@app.get("/")
def index() -> str:
    links = "".join(
        f'<li><a href="{url_for("product", product_id=pid)}">{name}</a></li>'
        for pid, name in PRODUCTS.items()
    )
    style = '<link rel="stylesheet" href="/static/shop.css">'
    return f"<!doctype html>{style}<h1>shop</h1><ul>{links}</ul>"


@app.get("/products/<product_id>")
def product(product_id: str) -> tuple[str, int] | str:
    name = PRODUCTS.get(product_id)
    if name is None:
        return "no such product\n", 404
    return f"shop: {name}\n"
