// Render an Ollama Modelfile TEMPLATE with Go's own text/template, the engine Ollama uses.
//
//	go build -o render main.go && echo '{"Messages": [...]}' | ./render 'TEMPLATE TEXT'
//
// The data on stdin is JSON whose keys match Ollama's template fields (Messages with Role and
// Content, System); tests/test_gguf.py compares the output with the tokenizer's chat template.
package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type message struct {
	Role    string
	Content string
}

type values struct {
	Messages []message
	System   string
}

func main() {
	var data values
	if err := json.NewDecoder(os.Stdin).Decode(&data); err != nil {
		panic(err)
	}
	tmpl := template.Must(template.New("modelfile").Parse(os.Args[1]))
	if err := tmpl.Execute(os.Stdout, data); err != nil {
		panic(err)
	}
}
