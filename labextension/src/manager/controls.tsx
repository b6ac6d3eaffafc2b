/**
 * The manager's form controls: `InlineForm` (a one-line form that submits without reloading the
 * page), `QuantSelect` (the quantization picker shared by the stored models' "Quantize…" row, the
 * catalog rows and the convert form), `TextInput` (a labelled text field) and `SubmitButton` (the
 * accept-styled button that submits a form). They own only the markup and its class names; which
 * choices, defaults and actions apply come from the caller.
 */
import * as React from 'react';

export function QuantSelect(props: {
  value: string;
  onChange: (value: string) => void;
  choices: readonly string[];
  label: string;
  testId?: string;
}): JSX.Element {
  return (
    <select
      className="llamalab-Manager-select"
      aria-label={props.label}
      data-testid={props.testId}
      value={props.value}
      onChange={e => props.onChange(e.currentTarget.value)}
    >
      {props.choices.map(choice => (
        <option key={choice} value={choice}>
          {choice}
        </option>
      ))}
    </select>
  );
}

/** A text field whose accessible name is `label`; `wide` lets it take the row's spare width. */
export function TextInput(props: {
  value: string;
  onChange: (value: string) => void;
  label: string;
  placeholder: string;
  testId: string;
  wide?: boolean;
}): JSX.Element {
  return (
    <input
      className={props.wide ? 'llamalab-Manager-input llamalab-mod-wide' : 'llamalab-Manager-input'}
      data-testid={props.testId}
      aria-label={props.label}
      placeholder={props.placeholder}
      value={props.value}
      onChange={e => props.onChange(e.currentTarget.value)}
    />
  );
}

/** A one-line form; submitting it calls `onSubmit` instead of navigating. */
export function InlineForm(props: { onSubmit: () => void; children?: React.ReactNode }): JSX.Element {
  return (
    <form
      className="llamalab-Manager-inline"
      onSubmit={e => {
        e.preventDefault();
        props.onSubmit();
      }}
    >
      {props.children}
    </form>
  );
}

/** The button that submits its form, styled as the form's main action. */
export function SubmitButton(props: { testId: string; disabled?: boolean; children?: React.ReactNode }): JSX.Element {
  return (
    <button type="submit" className="llamalab-Manager-button llamalab-mod-accept" data-testid={props.testId} disabled={props.disabled}>
      {props.children}
    </button>
  );
}
