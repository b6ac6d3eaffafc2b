// Unit tests for the front end's pure modules (message handling, completion logic, SSE
// parsing): they run in Node with ts-jest. Modules that need JupyterLab at run time are
// covered by the browser tests in tests/ui instead.
module.exports = {
  preset: 'ts-jest',
  testEnvironment: 'node',
  roots: ['<rootDir>/src'],
  testMatch: ['**/__tests__/**/*.spec.ts'],
  transform: {
    '^.+\\.tsx?$': ['ts-jest', { tsconfig: 'tsconfig.test.json' }]
  }
};
