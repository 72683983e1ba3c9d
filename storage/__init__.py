"""The sdht storage node: a Flask WSGI app (:func:`storage.app.create_app`) over LMDB."""
