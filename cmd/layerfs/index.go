package main

import "errors"

type indexCmd struct{}

func (c *indexCmd) Run(e *env) error { return errors.New("not written yet") }
