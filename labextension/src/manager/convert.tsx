/**
 * "Convert a Meta checkpoint": the convert form. It owns the form's three fields (the checkpoint
 * folder on the server, the quantization, an optional store name) and submits them to
 * `ManagerModel.convert`; the conversion itself runs on the server as a job.
 */
import * as React from 'react';

import { InlineForm, QuantSelect, SubmitButton, TextInput } from './controls';
import { Section, SectionProps } from './layout';
import { CONVERT_DEFAULT_QUANT, NO_QUANT, QUANT_CHOICES } from './logic';

export function ConvertSection({ model, state }: SectionProps): JSX.Element {
  const [source, setSource] = React.useState('');
  const [quant, setQuant] = React.useState<string>(CONVERT_DEFAULT_QUANT);
  const [name, setName] = React.useState('');
  return (
    <Section id="llamalab-manager-convert" title="Convert a Meta checkpoint">
      <p className="llamalab-Manager-note">
        A folder on the server holding Meta's download (consolidated.*.pth, params.json, tokenizer.model) or a Hugging Face model; it is
        converted to GGUF, quantized and added to your models.
      </p>
      <InlineForm onSubmit={() => void model.convert({ source, quant, name })}>
        <TextInput
          wide
          testId="llamalab-convert-source"
          label="Checkpoint folder on the server"
          placeholder="/data/llama/llama-2-7b-chat"
          value={source}
          onChange={setSource}
        />
        <QuantSelect
          value={quant}
          onChange={setQuant}
          choices={[...QUANT_CHOICES, NO_QUANT]}
          label="Quantization"
          testId="llamalab-convert-quant"
        />
        <TextInput
          testId="llamalab-convert-name"
          label="Name in the store (optional)"
          placeholder="name (optional)"
          value={name}
          onChange={setName}
        />
        <SubmitButton testId="llamalab-convert-button" disabled={state.busy.has('convert') || !source.trim()}>
          Convert
        </SubmitButton>
      </InlineForm>
    </Section>
  );
}
