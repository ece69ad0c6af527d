package main

import "errors"

type inspectCmd struct{}

func (c *inspectCmd) Run(e *env) error { return errors.New("not written yet") }
