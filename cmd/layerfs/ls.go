package main

import "errors"

type lsCmd struct{}

func (c *lsCmd) Run(e *env) error { return errors.New("not written yet") }
