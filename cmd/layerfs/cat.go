package main

import "errors"

type catCmd struct{}

func (c *catCmd) Run(e *env) error { return errors.New("not written yet") }
