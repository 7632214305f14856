"""Railyard's implementation of the `mac` interfaces bring-your-own-predict scripts are written against."""
